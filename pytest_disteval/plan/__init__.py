"""From a job and the GPUs to a plan: tp/pp/dp layouts, model sizing, groups and model_args."""
