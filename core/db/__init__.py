"""Database engines of our own (``DATABASES["default"]["ENGINE"]``), each a thin subclass of Django's."""
