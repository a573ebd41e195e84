from oidownload.commands.cli import main

main()
