// TFCheckpoint: placeholder
