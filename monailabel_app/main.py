"""SS-StyleGAN Label: MONAI Label app (skeleton while tasks land)."""

from __future__ import annotations

from monailabel.interfaces.app import MONAILabelApp


class SSStyleGANApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="SS-StyleGAN Label",
                         description="SS-StyleGAN few-label slice classification", version="0.1.0")
