#!/usr/bin/python3
"""Makes examples/site/photos/springfield.jpg, the example site's photo.

The picture is drawn here (no photograph is copied, so there is no licence
to track): a landscape of sky, sun, hills, a road and a house, with some
grain, 2400x1600, JPEG quality 85. Its EXIF holds a GPS position (a made-up
one) and a camera name, so that the example shows what image processing
strips: a rendition (`?w=800`) carries no EXIF. Needs Debian's python3-pil.

Deterministic: the same Pillow gives the same bytes.
"""
import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

W, H = 2400, 1600
out = Path(sys.argv[1] if len(sys.argv) > 1 else
           Path(__file__).resolve().parent.parent / "examples/site/photos/springfield.jpg")

img = Image.new("RGB", (W, H))
px = img.load()
# Sky: deep blue at the top to pale near the horizon.
for y in range(H):
    t = min(y / (H * 0.62), 1.0)
    row = (int(40 + 170 * t), int(90 + 130 * t), int(180 + 60 * t))
    for x in range(W):
        px[x, y] = row
d = ImageDraw.Draw(img)
d.ellipse((1700, 180, 1940, 420), fill=(255, 236, 170))
# Hills, far to near.
rng = random.Random(1989)
for depth, (base, colour) in enumerate([(980, (96, 140, 110)), (1100, (70, 128, 70)), (1260, (52, 110, 46))]):
    points = [(0, H)]
    for x in range(0, W + 100, 100):
        points.append((x, base - 120 * abs(((x / W) * (3 + depth)) % 2 - 1) - rng.randint(0, 40)))
    points.append((W, H))
    d.polygon(points, fill=colour)
# A road and a house.
d.polygon([(1080, H), (1320, H), (1215, 1180), (1185, 1180)], fill=(120, 116, 108))
d.rectangle((560, 1050, 860, 1260), fill=(238, 214, 120))
d.polygon([(530, 1060), (710, 930), (890, 1060)], fill=(150, 60, 50))
d.rectangle((680, 1150, 740, 1260), fill=(90, 60, 40))
d.rectangle((600, 1090, 650, 1140), fill=(170, 210, 240))
d.rectangle((780, 1090, 830, 1140), fill=(170, 210, 240))
img = img.filter(ImageFilter.GaussianBlur(1.2))
# Grain, as a photograph has.
noise = Image.effect_noise((W, H), 10).convert("RGB")
img = Image.blend(img, noise, 0.06)

exif = Image.Exif()
exif[0x010F] = "Makiatto example camera"   # Make
exif[0x0112] = 1                           # Orientation: upright
exif[0x8825] = {                           # GPS (a made-up place)
    1: "N", 2: (44.0, 2.0, 44.0),
    3: "W", 4: (123.0, 1.0, 20.0),
}
out.parent.mkdir(parents=True, exist_ok=True)
img.save(out, "JPEG", quality=85, exif=exif.tobytes())
print(f"{out}: {out.stat().st_size} bytes")
