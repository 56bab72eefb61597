"""`python -m gloro_keras.train ...` is `gloro-train ...`."""
from gloro_keras.train.train import run

if __name__ == "__main__":
    run()
