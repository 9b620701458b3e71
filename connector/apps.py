from django.apps import AppConfig


class ConnectorConfig(AppConfig):
    name = "connector"
    verbose_name = "Connectors"

    def ready(self) -> None:
        from connector import schema  # noqa: F401  (registers the OpenAPI auth extension)
