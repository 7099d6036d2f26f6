"""`python -m gigatok.bench tokenizer|gpt|eval [flags]`."""
import sys

from gigatok.bench import main

sys.exit(main())
