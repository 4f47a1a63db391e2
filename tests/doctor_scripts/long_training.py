"""Trains for a long time (stopped by Ctrl-C in the test)."""
import keras
from small import make_pairs, unet

images, masks = make_pairs()
model = unet()
model.compile(optimizer="adam", loss="binary_crossentropy")
model.fit(images[:128], masks[:128], batch_size=16, epochs=1000, validation_data=(images[128:], masks[128:]), verbose=2)
