"""Where the model's checkpoint is and getting it: finding and checking a folder, ``model_status``
from the disk alone, ``download_model`` resumable, the Hub's listing read as hostile data."""
