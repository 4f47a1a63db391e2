"""The accepted answer's second solution, exactly as posted: keep the whitened masks, give the model a
tanh output, and train it with a "modified BCE", 0.5*((1-y)*log(1-p) + (1+y)*log(1+p)). As posted the
formula lacks its minus sign: minimizing it drives every output to the wrong end.

    harness doctor examples/whitening_solution2_posted.py
"""
import keras
from keras import ops
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


def modified_bce(y_true, y_pred):
    return ops.mean(0.5 * ((1 - y_true) * ops.log(1 - y_pred) + (1 + y_true) * ops.log(1 + y_pred)))


model = unet(size=64, depth=8, levels=3, activation="tanh")
model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=modified_bce, metrics=["accuracy"])
model.fit(train_generator(), steps_per_epoch=len(image_generator), epochs=50, validation_data=(x_val, y_val))
