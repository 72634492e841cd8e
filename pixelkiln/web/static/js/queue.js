// /queue: built next (this issue).
