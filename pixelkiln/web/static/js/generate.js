// /generate: built next (this issue).
