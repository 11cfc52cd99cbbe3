"""`manage.py restore_backup`: the name issue 10 uses for `manage.py restore`."""
from .restore import Command as RestoreCommand


class Command(RestoreCommand):
    pass
