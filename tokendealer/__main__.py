from tokendealer.cli import main

main()
