"""The independent random streams of the synthetic set.

The identities, the cameras, every person image and every distractor each get their own numpy
``SeedSequence`` (``[seed, stream, ...]``), so no output depends on the order of generation.
The numbers must stay distinct and unchanged: they are part of every generated image.
"""

STREAM_IDENTITIES = 1
STREAM_CAMERAS = 2
STREAM_IMAGE = 3
STREAM_DISTRACTOR = 4
