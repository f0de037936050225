"""Evaluation of generative models. `two_sample`: kernel MMD two-sample tests."""
