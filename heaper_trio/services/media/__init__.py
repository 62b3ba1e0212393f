"""Media: thumbnails and frames for images and video, type sniffing, client-sent thumbnails."""
