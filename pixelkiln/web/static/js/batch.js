// /batch: built next (this issue).
