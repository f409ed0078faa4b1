"""Upstreams, quantizers, mixed precision, packed export and cost accounting.

Knows nothing of downstream tasks: an upstream maps waveforms to hidden states.
"""
from .loading import UpstreamUnavailable, known_upstreams, load_upstream
from .upstream import Upstream, pick_device
from .version import __version__

__all__ = ["Upstream", "UpstreamUnavailable", "__version__", "known_upstreams", "load_upstream", "pick_device"]
