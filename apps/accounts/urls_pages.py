"""The user's own pages (session login): /account/api-keys/."""
from django.urls import path

from . import views

app_name = "accounts"
urlpatterns = [
    path("account/api-keys/", views.api_keys, name="api_keys"),
    path("account/api-keys/<int:pk>/revoke/", views.api_key_revoke_view, name="api_key_revoke"),
]
