"""`python -m jaxpet.text2text --config FILE.yaml [key=value ...]`: one text-to-text run."""

from jaxpet.text2text.run import main

if __name__ == "__main__":
    raise SystemExit(main())
