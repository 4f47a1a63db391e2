"""The masks shuffled against their images (one list sorted, the other not): nothing in an image says
where its mask is."""
import numpy as np
import keras
from small import make_pairs, unet

images, masks = make_pairs()
masks = masks[np.random.default_rng(0).permutation(len(masks))]
model = unet()
model.compile(optimizer="adam", loss="binary_crossentropy")
model.fit(images[:128], masks[:128], batch_size=16, epochs=20, validation_data=(images[128:], masks[128:]), verbose=2)
