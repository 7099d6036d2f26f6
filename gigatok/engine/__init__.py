"""Level 2: the engines the stages drive. They join models, data and infra into loops (training steps, sampling,
probe training) and hold no entry point; stages call them, nothing below imports them."""
