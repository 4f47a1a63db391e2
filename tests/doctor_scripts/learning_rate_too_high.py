"""A learning rate far too high for Adam."""
import keras
from small import make_pairs, unet

images, masks = make_pairs()
model = unet()
model.compile(optimizer=keras.optimizers.Adam(learning_rate=10.0), loss="binary_crossentropy")
model.fit(images[:128], masks[:128], batch_size=16, epochs=20, validation_data=(images[128:], masks[128:]), verbose=2)
