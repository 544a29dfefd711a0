"""Placeholder until the synthetic-data demo lands: builds the three shipped generator UNets and counts them."""
import sys

import unet_loader

if __name__ == "__main__":
    for folder in ("customized_unet_small", "customized_unet", "customized_unet_large"):
        unet_loader.main(["--load", "--ckpt", folder])
    sys.exit(0)
