from django.apps import AppConfig


class LiquidationConfig(AppConfig):
    name = "apps.liquidation"
    label = "liquidation"
    verbose_name = "Margin monitoring and liquidation"

    def ready(self):
        from .conf import liquidation_setting
        from .screen import screen_on_mark

        if liquidation_setting("LIQUIDATION_SCREEN_ON_MARK"):
            from apps.marketdata.services import mark_listener_register

            mark_listener_register(screen_on_mark)
