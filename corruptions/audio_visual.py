"""AVRobustBench's 15 audio-visual pairs (spec 3.2): a visual part and an audio part with the same severity."""

from __future__ import annotations

from .audio import AVRB_AUDIO
from .registry import AV, VIDEO
from .video import AVRB_VISUAL

# pair name -> (visual part, audio part); "wind" uses the ImageNet-C motion blur the reference meant (FIX item 35)
_VISUAL = {
    "gaussian": VIDEO["gaussian_noise"],
    "impulse": VIDEO["impulse_noise"],
    "shot": VIDEO["shot_noise"],
    "speckle": AVRB_VISUAL["speckle"],
    "compression": VIDEO["jpeg_compression"],
    "snow": AVRB_VISUAL["snow"],
    "frost": VIDEO["frost"],
    "spatter": AVRB_VISUAL["spatter"],
    "wind": VIDEO["motion_blur"],
    "rain": AVRB_VISUAL["rain"],
    "underwater": AVRB_VISUAL["underwater"],
    "concert": VIDEO["brightness"],
    "smoke": AVRB_VISUAL["smoke"],
    "crowd": AVRB_VISUAL["crowd"],
    "interference": AVRB_VISUAL["interference"],
}

for _name, _visual in _VISUAL.items():
    AV[_name] = (_visual, AVRB_AUDIO[_name])
