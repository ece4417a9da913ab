"""topkrec: REINFORCE with the top-K off-policy correction (Chen et al., WSDM 2019)."""

__version__ = "0.1.0"

__all__ = ["__version__"]
