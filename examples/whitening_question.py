"""The question, in our words: "model not training and negative loss when whitening input data".

Two ImageDataGenerators are built from one dict of arguments, so both whiten (featurewise_center and
featurewise_std_normalization): the masks are whitened too, and binary cross-entropy is handed
targets outside [0, 1]. Validation is passed raw. Written for Keras 3 (a bare zip is rejected by
fit, so the pair goes through a generator); the data and the U-Net are small stand-ins (case.py).

    harness doctor examples/whitening_question.py
"""
import keras
from tensorflow.keras.preprocessing.image import ImageDataGenerator

from case import make_pairs, unet

keras.utils.set_random_seed(1)          # the same initial weights on every run
images, masks = make_pairs(n=384, size=64)
x_train, y_train, x_val, y_val = images[:320], masks[:320], images[320:], masks[320:]

data_gen_args = dict(featurewise_center=True, featurewise_std_normalization=True, rotation_range=30,
                     width_shift_range=0.2, height_shift_range=0.2, zoom_range=0.2, horizontal_flip=True,
                     fill_mode="nearest")
image_datagen = ImageDataGenerator(**data_gen_args)
mask_datagen = ImageDataGenerator(**data_gen_args)

seed = 1
image_datagen.fit(x_train, augment=True, seed=seed, rounds=2)
mask_datagen.fit(y_train, augment=True, seed=seed, rounds=2)
image_generator = image_datagen.flow(x_train, batch_size=16, seed=seed)
mask_generator = mask_datagen.flow(y_train, batch_size=16, seed=seed)


def train_generator():
    for x, y in zip(image_generator, mask_generator):
        yield x, y


model = unet(size=64, depth=8, levels=3)
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
model.fit(train_generator(), steps_per_epoch=len(image_generator), epochs=50, validation_data=(x_val, y_val))
