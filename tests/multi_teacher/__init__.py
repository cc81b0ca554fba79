"""Multi-teacher strategies and the TAKD/DGKD pipeline."""
