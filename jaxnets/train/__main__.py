"""`python -m jaxnets.train --config ... --workdir ...` == `jaxnets train ...`."""
import sys

from jaxnets.cli import main

sys.exit(main(["train", *sys.argv[1:]]))
