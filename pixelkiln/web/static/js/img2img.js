// /img2img: built next (this issue).
