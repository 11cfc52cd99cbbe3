"""The logged-in user's API-keys page: list, create (secret shown once), revoke own keys."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from .forms import ApiKeyCreateForm
from .models import ApiKey
from .selectors import api_keys_of_user
from .services import api_key_create, api_key_revoke


@never_cache
@login_required
@require_http_methods(["GET", "POST"])
def api_keys(request):
    created = secret = None
    if request.method == "POST":
        form = ApiKeyCreateForm(request.POST)
        if form.is_valid():
            created, secret = api_key_create(user=request.user, **form.cleaned_data)
            # Rendered straight into this response (never stored in a message or the
            # session), and never_cache keeps it out of caches.
            form = ApiKeyCreateForm()
    else:
        form = ApiKeyCreateForm()
    context = {"keys": api_keys_of_user(user=request.user), "form": form, "created": created, "secret": secret}
    return render(request, "accounts/api_keys.html", context)


@login_required
@require_POST
def api_key_revoke_view(request, pk: int):
    api_key = get_object_or_404(ApiKey, pk=pk, user=request.user)
    api_key_revoke(api_key=api_key)
    messages.success(request, f"API key {api_key.key[:8]}… revoked.")
    return redirect("accounts:api_keys")
