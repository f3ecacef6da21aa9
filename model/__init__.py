"""The two-column AlexNet of Krizhevsky, Sutskever & Hinton (NIPS 2012)."""
