// /batch_detail: built next (this issue).
