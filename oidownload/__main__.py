from oidownload.commands import main

main()
