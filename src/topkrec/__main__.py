from topkrec.cli import main

main()
