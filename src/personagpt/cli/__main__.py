from personagpt.cli import main

main()
