"""Masks left at 0/255, as read from PNG files, fed to binary cross-entropy."""
import keras
from small import make_pairs, unet

images, masks = make_pairs()
masks = masks * 255.0
model = unet()
model.compile(optimizer="adam", loss="binary_crossentropy")
model.fit(images[:128], masks[:128], batch_size=16, epochs=20, validation_data=(images[128:], masks[128:]), verbose=2)
