"""`python -m jaxpet.bench`: the benchmark command line."""

from jaxpet.bench.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
