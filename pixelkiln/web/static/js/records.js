// /records: built next (this issue).
