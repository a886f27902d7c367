from bulk_update.cli import console

console()
