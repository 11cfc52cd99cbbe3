from django.apps import AppConfig


class SimulationConfig(AppConfig):
    name = "apps.simulation"
    label = "simulation"
    verbose_name = "Market simulation (scenarios, soak, demo traders)"
