"""One module per group of figures; each returns report rows and never asserts a timing."""
