"""Collection settings for the doctests of the packages (``--doctest-modules`` over ``unlearn`` and ``proxies``)."""

import importlib.util

# unlearn.training.lightning needs the optional ``lightning`` extra (make install and CI install it); without it the
# module cannot be imported, so its doctests are not collected.
collect_ignore = [] if importlib.util.find_spec("lightning") else ["unlearn/training/lightning.py"]
# unlearn.training.transformers likewise needs the ``text`` extra (transformers, and accelerate for its Trainer)
if not (importlib.util.find_spec("transformers") and importlib.util.find_spec("accelerate")):
    collect_ignore.append("unlearn/training/transformers.py")
