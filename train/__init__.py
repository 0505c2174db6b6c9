"""x2ctclip.train: the application layer (data, trainers, evaluation, few-shot, command line)."""
