"""Train and evaluate: python train.py --config configs/X.yaml [key=value ...]"""

import sys

from jaxpet.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main(sys.argv[1:]))
