"""The seed's examples as runnable code: handlers for their events and the calls that schedule them."""
