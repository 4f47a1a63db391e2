"""How batches reach the model: one interface (Feed, base.py), one module per feed (tfdata.py,
imagedatagenerator.py, device.py), and the one place a feed is chosen (choose.py: choose_feed).
Empty on purpose: importing a feed module imports nothing else of the package."""
