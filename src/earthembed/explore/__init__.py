"""Looking at embeddings: 2-D projections coloured by labels."""

from earthembed.explore.projection import plot_embeddings, project

__all__ = ["plot_embeddings", "project"]
