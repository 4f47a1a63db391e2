"""A custom training loop: the model is compiled, but trained step by step, never through fit."""
import keras
from small import make_pairs, unet

images, masks = make_pairs(n=32)
model = unet()
model.compile(optimizer="adam", loss="binary_crossentropy")
for step in range(2):
    loss = model.train_on_batch(images[:16], masks[:16])
print(f"trained {step + 1} steps by hand, loss {float(loss):.3f}")
