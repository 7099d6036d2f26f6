"""`python -m gigatok <stage> [flags]`: the same as the `gigatok` console command."""
import sys

from gigatok.stages import main

sys.exit(main())
