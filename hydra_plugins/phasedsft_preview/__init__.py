"""phasedsft's Hydra sweeper: Hydra's basic sweeper, except that a preview runs where it is launched."""
