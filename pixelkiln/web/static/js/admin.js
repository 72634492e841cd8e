// /admin: built next (this issue).
